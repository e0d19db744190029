//! Statuspage: one incident per mxguard incident on the configured page, affecting the
//! configured component. Created (`POST /v1/pages/{page}/incidents`) at the first event of the
//! incident at or above the target's severity, updated (`PATCH …/incidents/{id}`) when the
//! public status or the component's status changes, resolved (status `resolved`, component
//! `operational`) when the incident closes. The text is written for the public, not the
//! operator: no internal phase names.
//!
//! The Statuspage incident id is kept in memory. After a restart in the middle of an incident,
//! the open Statuspage incidents of the page are listed once
//! (`GET /v1/pages/{page}/incidents/unresolved`) and the one with this incident's name is used
//! again, so no duplicate is created; its name holds the domain and the incident's start.

use serde_json::{json, Value};

use super::classify::Item;
use crate::machine::Phase;

/// The public status (`investigating` / `identified` / `monitoring` / `resolved`) and the
/// component's (`major_outage` / `degraded_performance` / `operational`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Public {
    pub incident: &'static str,
    pub component: &'static str,
}

pub fn public(item: &Item) -> Public {
    if item.resolves {
        return Public {
            incident: "resolved",
            component: "operational",
        };
    }
    let incident = match item.state().phase {
        _ if item.mail_blocked() => "investigating",
        Phase::FailingOver | Phase::OnBackup => "identified",
        Phase::FailbackPending | Phase::FailingBack => "monitoring",
        _ => "investigating",
    };
    let component = if item.mail_blocked() {
        "major_outage"
    } else {
        "degraded_performance"
    };
    Public {
        incident,
        component,
    }
}

/// Stable for one incident: how a restarted mxguard finds it again.
pub fn incident_name(item: &Item) -> Option<String> {
    let i = item.incident.as_ref()?;
    Some(format!(
        "Mail delivery for {} (since {})",
        item.domain(),
        i.since.format("%Y-%m-%d %H:%M:%S UTC")
    ))
}

/// What the public reads for this step.
fn text(item: &Item) -> String {
    let d = item.domain();
    if item.resolves {
        return format!("Mail for {d} is delivered by its primary mail servers again.");
    }
    if item.mail_blocked() {
        return format!(
            "Mail for {d} cannot be delivered at the moment. Sending servers keep retrying, so \
             mail is delayed rather than lost."
        );
    }
    match item.state().phase {
        Phase::FailingOver | Phase::OnBackup => format!(
            "The primary mail servers for {d} are unavailable; mail is being delivered through \
             the backup mail servers."
        ),
        Phase::FailbackPending | Phase::FailingBack => format!(
            "The primary mail servers for {d} have recovered; mail returns to them once they \
             have stayed healthy for a while."
        ),
        _ => format!("We are investigating mail delivery for {d}."),
    }
}

pub fn create(item: &Item, component_id: &str) -> Option<Value> {
    let p = public(item);
    Some(json!({"incident": {
        "name": incident_name(item)?,
        "status": p.incident,
        "body": text(item),
        "component_ids": [component_id],
        "components": {component_id: p.component},
    }}))
}

pub fn update(item: &Item, component_id: &str) -> Value {
    let p = public(item);
    json!({"incident": {
        "status": p.incident,
        "body": text(item),
        "component_ids": [component_id],
        "components": {component_id: p.component},
    }})
}

/// The id of the unresolved incident named `name` in a `GET …/incidents/unresolved` answer.
pub fn find(list: &Value, name: &str) -> Option<String> {
    list.as_array()?
        .iter()
        .find(|i| i["name"].as_str() == Some(name))
        .and_then(|i| i["id"].as_str())
        .map(str::to_string)
}

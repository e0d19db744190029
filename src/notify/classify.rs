//! What a notice means to a notification: its severity, the incident it belongs to (and that
//! incident's stable key), the links to act on the domain, and short summaries of the state and
//! the evidence that every payload shares.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Severity;
use crate::events::{EventKind, Notice};
use crate::health::Health;
use crate::machine::{DomainState, Override, Phase};
use crate::model::{Fqdn, Side};
use crate::store::Event;

/// The severity of an event, by kind (and, for transitions and health, by where it went).
///
/// | kind | severity |
/// |---|---|
/// | `alert.both_down`, `alert.change_failed`, `alert.provider_read_failed` (no failover possible), `alert.mta_sts_refused` (failover refused: mail stops), `alert.mta_sts_failover` (failed over to a backup compliant senders refuse), a transition into `BothDown` | critical |
/// | `alert.flap_guard`, any other `alert.*`, a transition into `FailingOver`, a side's health turning `Down`, `drift` | warning |
/// | everything else (other transitions, `override`, `operator`, `change`, `propagation`, health recovering) | info |
pub fn severity_of(event: &Event) -> Severity {
    match event.kind {
        EventKind::BothDown
        | EventKind::ChangeFailed
        | EventKind::ProviderReadFailed
        | EventKind::MtaStsFailoverRefused
        | EventKind::MtaStsFailover => Severity::Critical,
        k if k.is_alert() => Severity::Warning,
        EventKind::Transition => match crate::events::transition(event) {
            Some((_, Phase::BothDown)) => Severity::Critical,
            Some((_, Phase::FailingOver)) => Severity::Warning,
            _ => Severity::Info,
        },
        EventKind::Health if combined_health(event) == Some(Health::Down) => Severity::Warning,
        EventKind::Drift => Severity::Warning,
        _ => Severity::Info,
    }
}

/// The leader's combined verdict that a `health` event carries (`{"side", "combined"}`).
fn combined_health(event: &Event) -> Option<Health> {
    serde_json::from_value(event.evidence["combined"]["health"].clone()).ok()
}

/// The incident key: the domain and the persisted start of its incident, so it is the same for
/// every event of one incident — across a restart too — and differs between incidents.
/// PagerDuty allows 255 characters; a domain too long for that is replaced by its hash.
pub fn dedup_key(domain: &Fqdn, since: DateTime<Utc>) -> String {
    let at = since.to_rfc3339_opts(SecondsFormat::Millis, true);
    let key = format!("mxguard/{}/{at}", domain.without_dot());
    if key.len() <= 255 {
        return key;
    }
    let digest = Sha256::digest(domain.without_dot().as_bytes());
    let short: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("mxguard/{short}/{at}")
}

/// The domain's incident as of one notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentView {
    pub key: String,
    pub since: DateTime<Utc>,
    /// `None` while open.
    pub until: Option<DateTime<Utc>>,
}

/// One notice, classified once and shared by every target's queue.
#[derive(Debug)]
pub struct Item {
    pub notice: Arc<Notice>,
    pub severity: Severity,
    pub incident: Option<IncidentView>,
    /// The first notice after its incident closed: targets send their resolve now.
    pub resolves: bool,
    pub links: DomainLinks,
}

impl Item {
    pub fn new(notice: Arc<Notice>, resolves: bool, links: &Links) -> Item {
        let domain = &notice.event.domain;
        let incident = notice.state.incident.map(|i| IncidentView {
            key: dedup_key(domain, i.since),
            since: i.since,
            until: i.until,
        });
        Item {
            severity: severity_of(&notice.event),
            links: links.domain(domain),
            incident,
            resolves,
            notice,
        }
    }

    pub fn domain(&self) -> &str {
        self.notice.event.domain.without_dot()
    }

    pub fn state(&self) -> &DomainState {
        &self.notice.state
    }

    /// The incident as payloads show it.
    pub fn incident_json(&self) -> Value {
        match &self.incident {
            None => Value::Null,
            Some(i) => json!({
                "key": i.key,
                "status": if i.until.is_some() { "resolved" } else { "open" },
                "since": time(i.since),
                "until": i.until.map(time),
            }),
        }
    }

    /// The machine's state, short: what every payload carries.
    pub fn state_json(&self) -> Value {
        let s = self.state();
        json!({
            "phase": name(&s.phase),
            "since": s.since.map(time),
            "published": s.published,
            "in_flight": s.in_flight,
            "primary": s.primary,
            "backup": s.backup,
            "override": s.overrides,
        })
    }

    /// One line per target verdict in the event's evidence, failing targets first, at most 6.
    pub fn evidence_lines(&self) -> Vec<String> {
        evidence_lines(&self.notice.event.evidence)
    }

    /// The phase as the operator reads it, plus the override if any.
    pub fn state_line(&self) -> String {
        let s = self.state();
        let mut line = format!("{:?}", s.phase);
        match &s.overrides {
            Some(Override::Paused { by, .. }) => line.push_str(&format!(" (paused by {by})")),
            Some(Override::Pinned { side, until, .. }) => {
                line.push_str(&format!(" (pinned to {side} until {})", time(*until)))
            }
            None => {}
        }
        line
    }

    /// Whether mail currently goes to a side that is Down.
    pub fn mail_blocked(&self) -> bool {
        let s = self.state();
        s.phase == Phase::BothDown
            || match s.published {
                Some(Side::Primary) => s.primary == Health::Down,
                Some(Side::Backup) => s.backup == Health::Down,
                None => false,
            }
    }
}

/// RFC 3339, milliseconds, `Z`.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A serde enum's name (`failing_over`).
pub fn name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

/// Verdicts appear as `{"rounds": [{side, verdicts}]}` (machine events),
/// `{"side", "combined": {"votes": [{vantage, verdicts}]}}` (health events: every vantage's
/// vote) or `{"side", "verdicts"}`.
fn evidence_lines(evidence: &Value) -> Vec<String> {
    let mut verdicts: Vec<(bool, String)> = Vec::new();
    let mut collect = |side: &str, list: &Value| {
        for v in list.as_array().into_iter().flatten() {
            let up = v["up"].as_bool().unwrap_or(false);
            let target = v["target"].as_str().unwrap_or("?");
            let reason = truncate(v["reason"].as_str().unwrap_or(""), 160);
            let state = if up { "up" } else { "down" };
            verdicts.push((up, format!("{side} {target}: {state}, {reason}")));
        }
    };
    if let Some(rounds) = evidence["rounds"].as_array() {
        for r in rounds {
            collect(r["side"].as_str().unwrap_or("?"), &r["verdicts"]);
        }
    } else if let Some(side) = evidence["side"].as_str() {
        match evidence["combined"]["votes"].as_array() {
            Some(votes) => {
                for v in votes {
                    let vantage = v["vantage"].as_str().unwrap_or("?");
                    collect(&format!("{side} (vantage {vantage})"), &v["verdicts"]);
                }
            }
            None => collect(side, &evidence["verdicts"]),
        }
    }
    verdicts.sort_by_key(|(up, _)| *up);
    verdicts.into_iter().take(6).map(|(_, l)| l).collect()
}

/// At most `max` characters, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Where receivers reach this mxguard's API.
#[derive(Debug, Clone)]
pub struct Links {
    base: String,
}

/// The API routes of one domain (see `openapi.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainLinks {
    /// `GET`: the domain's status.
    pub status: String,
    /// `GET`: its timeline.
    pub events: String,
    /// `PUT` to pin a side, `DELETE` to lift the pin (both take a JSON body with a reason).
    pub pin: String,
}

impl Links {
    pub fn new(base: &str) -> Links {
        Links {
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub fn domain(&self, domain: &Fqdn) -> DomainLinks {
        let status = format!("{}/v1/domains/{}", self.base, domain.without_dot());
        DomainLinks {
            events: format!("{status}/events"),
            pin: format!("{status}/pin"),
            status,
        }
    }
}

impl DomainLinks {
    pub fn json(&self) -> Value {
        json!({
            "status": self.status,
            "events": self.events,
            "pin": {"method": "PUT", "url": self.pin},
            "unpin": {"method": "DELETE", "url": self.pin},
        })
    }
}

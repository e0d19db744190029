//! Incidents derived from a domain's timeline. Pure: the store's events go in oldest first (by
//! id), one at a time, and the incidents come out; no I/O, no clock.
//!
//! Rules:
//! * An incident **opens** at the first `transition` into FailingOver, OnBackup,
//!   FailbackPending, FailingBack or BothDown while none is open: the machine left normal
//!   operation (automation or an operator's failover or pin, both sides Down, a start on the
//!   backup's records). Unknown is in between and opens nothing.
//! * It **starts** at the first sign: the `health` event that took the primary Down, when the
//!   primary's last health event before the opening transition says Down and came after the
//!   previous incident closed; otherwise at the opening transition. Its **id** is the id of that
//!   first event, so it stays the same as the timeline grows (a timeline pruned into the middle
//!   of an incident starts it at its oldest kept event).
//! * It **closes** at the next `transition` into Primary: the failback verified at the
//!   authoritative servers (or both sides Down ending on the primary's records). Until then it
//!   is open; only the newest incident can be.
//! * Every event from its first to its closing one belongs to it, and a `propagation` event to
//!   the incident holding the change it names (propagation is recorded after its change, maybe
//!   after the close). No event belongs to two incidents; incidents never overlap.
//! * Milestones: **outage** (the start); **decision** (the first transition into FailingOver);
//!   **accepted** by the provider (the first backup `change` after it: the change event's time
//!   less its slowest authoritative `after_ms`, since verification starts when the provider has
//!   accepted, never before the decision); **authoritative** (that change event); each
//!   **resolver** (the change's time plus the resolver's `after_ms` in the change's
//!   `propagation` event); **recovery** (the primary's last `health` Up within the incident,
//!   the start of the run the failback hold counted); **failback decision** (the last
//!   transition into FailingBack), its **accepted**, **authoritative** and resolvers as for
//!   the failover (the primary `change` after it), and **failback verified** (the close).
//!   Milestones are listed in time order; each chain is ordered by construction.
//! * Operator actions are the events that carry a reason (commands and reverts are recorded
//!   with the token's name and the operator's reason); alerts are the `alert.*` events; what
//!   mxguard did are the transitions, changes, reverts, fenced writes, waits and drift (an
//!   operator's failover is both an action and a step).
//!
//! The machine's own `DomainState::incident` (for notifications) also counts a flap guard's
//! pause as an incident; here that pause is an alert of the incident it happens in. Likewise a
//! failover refused under `mta_sts = "block"` (the primary Down, the backup refused by the
//! domain's MTA-STS policy) opens the machine's incident, so its critical alert and the
//! primary's return share a PagerDuty key, but makes no transition: here it is an
//! `alert.mta_sts_refused` event, inside an incident only if one is open.

pub mod markdown;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use self::markdown::postmortem;
use crate::events::{self, EventKind};
use crate::health::Health;
use crate::machine::Phase;
use crate::model::Side;
use crate::store::Event;

pub type Time = DateTime<Utc>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Closed,
}

/// A step of an incident, in the order the chains run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Outage,
    Decision,
    Accepted,
    Authoritative,
    Resolver,
    Recovery,
    FailbackDecision,
    FailbackAccepted,
    FailbackAuthoritative,
    FailbackVerified,
    FailbackResolver,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    pub step: Step,
    pub at: Time,
    /// The event it is read from.
    pub event: i64,
    pub since_start_ms: i64,
    /// The resolver, for the resolver steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// The durations between the milestones; `None` where a milestone is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durations {
    pub outage_to_decision_ms: Option<i64>,
    pub decision_to_accepted_ms: Option<i64>,
    pub accepted_to_authoritative_ms: Option<i64>,
    /// To the last resolver that showed the backup's records.
    pub authoritative_to_resolvers_ms: Option<i64>,
    pub recovery_to_failback_ms: Option<i64>,
    pub failback_decision_to_verified_ms: Option<i64>,
    pub total_ms: Option<i64>,
}

/// One event of the incident, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub event: i64,
    pub at: Time,
    pub kind: EventKind,
    /// Who: `automation`, an instance, or an API token's name.
    pub by: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: i64,
    pub status: Status,
    pub start: Time,
    pub end: Option<Time>,
    /// What opened it: the first event's message.
    pub cause: String,
    pub milestones: Vec<Milestone>,
    pub durations: Durations,
    /// Resolvers that had not shown a change of this incident when its propagation was recorded.
    pub not_seen: Vec<String>,
    /// What mxguard did.
    pub steps: Vec<Entry>,
    pub operator_actions: Vec<Entry>,
    pub alerts: Vec<Entry>,
    /// Every event of the incident, by id, oldest first.
    pub evidence: Vec<i64>,
}

/// A moment read from an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    at: Time,
    event: i64,
}

impl Mark {
    fn of(e: &Event) -> Mark {
        Mark {
            at: e.at,
            event: e.id,
        }
    }
}

/// One side of the incident's story: a move to a side and its change.
#[derive(Debug, Clone, Default)]
struct Chain {
    decision: Option<Mark>,
    accepted: Option<Mark>,
    authoritative: Option<Mark>,
    resolvers: Vec<(String, Mark)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Failover,
    Failback,
}

#[derive(Debug, Clone)]
struct Building {
    first: Mark,
    cause: String,
    end: Option<Mark>,
    failover: Chain,
    recovery: Option<Mark>,
    failback: Chain,
    not_seen: Vec<String>,
    steps: Vec<Entry>,
    operator_actions: Vec<Entry>,
    alerts: Vec<Entry>,
    evidence: Vec<i64>,
}

/// The fold: push the timeline's events oldest first, then [`Timeline::finish`].
#[derive(Debug, Default)]
pub struct Timeline {
    incidents: Vec<Building>,
    /// The primary's last health event, while it says Down and no incident is open.
    primary_down: Option<(Mark, String)>,
    /// Change id → the incident and chain it belongs to.
    changes: HashMap<i64, (usize, Which)>,
}

/// Incidents of a whole timeline (events oldest first), oldest first.
pub fn derive<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<Incident> {
    let mut t = Timeline::default();
    for e in events {
        t.push(e);
    }
    t.finish()
}

fn entry(e: &Event) -> Entry {
    Entry {
        event: e.id,
        at: e.at,
        kind: e.kind,
        by: e.actor.clone(),
        reason: e.reason.clone(),
        message: e.message.clone(),
    }
}

fn out_of_normal(p: Phase) -> bool {
    matches!(
        p,
        Phase::FailingOver
            | Phase::OnBackup
            | Phase::FailbackPending
            | Phase::FailingBack
            | Phase::BothDown
    )
}

/// A `health` event's side and combined verdict.
fn health(e: &Event) -> Option<(Side, Health)> {
    if e.kind != EventKind::Health {
        return None;
    }
    let side = serde_json::from_value(e.evidence["side"].clone()).ok()?;
    let h = serde_json::from_value(e.evidence["combined"]["health"].clone()).ok()?;
    Some((side, h))
}

/// A finished change's side, id and slowest authoritative server (ms from acceptance).
fn change(e: &Event) -> Option<(Side, Option<i64>, i64)> {
    if e.kind != EventKind::Change {
        return None;
    }
    let side = serde_json::from_value(e.evidence["side"].clone()).ok()?;
    let slowest = e.evidence["authoritative"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["after_ms"].as_i64())
        .max()
        .unwrap_or(0);
    Some((side, e.evidence["change_id"].as_i64(), slowest.max(0)))
}

fn ms(d: chrono::TimeDelta) -> i64 {
    d.num_milliseconds()
}

impl Timeline {
    fn open(&mut self) -> Option<&mut Building> {
        self.incidents.last_mut().filter(|b| b.end.is_none())
    }

    pub fn push(&mut self, e: &Event) {
        if e.kind == EventKind::Propagation && self.propagation(e) {
            return;
        }
        let health = health(e);
        let transition = events::transition(e);
        if self.open().is_none() {
            match (health, transition) {
                (Some((Side::Primary, Health::Down)), _) => {
                    self.primary_down = Some((Mark::of(e), e.message.clone()))
                }
                (Some((Side::Primary, _)), _) => self.primary_down = None,
                (_, Some((_, to))) if out_of_normal(to) => self.begin(e),
                _ => {}
            }
            if self.open().is_none() {
                return;
            }
        }
        let index = self.incidents.len() - 1;
        let mut registered = None;
        let Some(b) = self.open() else { return };
        if b.evidence.last() != Some(&e.id) {
            b.evidence.push(e.id);
        }
        let mark = Mark::of(e);
        match (transition, health, change(e)) {
            (Some((_, Phase::FailingOver)), _, _) if b.failover.decision.is_none() => {
                b.failover.decision = Some(mark)
            }
            (Some((_, Phase::FailingBack)), _, _) => {
                b.failback = Chain {
                    decision: Some(mark),
                    ..Chain::default()
                }
            }
            (Some((_, Phase::Primary)), _, _) => b.end = Some(mark),
            (_, Some((Side::Primary, Health::Up)), _) => {
                b.recovery.get_or_insert(mark);
            }
            (_, Some((Side::Primary, _)), _) => b.recovery = None,
            (_, _, Some((Side::Backup, id, slowest))) if b.failover.authoritative.is_none() => {
                if let Some(decision) = b.failover.decision {
                    accept(&mut b.failover, mark, slowest, decision.at);
                    registered = id.map(|id| (id, Which::Failover));
                }
            }
            (_, _, Some((Side::Primary, id, slowest))) => {
                if let Some(decision) = b.failback.decision {
                    b.failback.resolvers.clear();
                    accept(&mut b.failback, mark, slowest, decision.at);
                    registered = id.map(|id| (id, Which::Failback));
                }
            }
            _ => {}
        }
        if e.reason.is_some() {
            b.operator_actions.push(entry(e));
        }
        if e.kind.is_alert() {
            b.alerts.push(entry(e));
        }
        if matches!(
            e.kind,
            EventKind::Transition
                | EventKind::Change
                | EventKind::Revert
                | EventKind::Fenced
                | EventKind::ChangeWaiting
                | EventKind::Drift
        ) {
            b.steps.push(entry(e));
        }
        if let Some((id, which)) = registered {
            self.changes.insert(id, (index, which));
        }
    }

    /// Opens an incident at transition `e`, starting at the primary's Down verdict if one led
    /// to it.
    fn begin(&mut self, e: &Event) {
        let (first, cause, mut evidence) = match self.primary_down.take() {
            Some((mark, message)) => (mark, message, vec![mark.event]),
            None => (Mark::of(e), e.message.clone(), vec![]),
        };
        evidence.push(e.id);
        evidence.dedup();
        self.incidents.push(Building {
            first,
            cause,
            end: None,
            failover: Chain::default(),
            recovery: None,
            failback: Chain::default(),
            not_seen: vec![],
            steps: vec![],
            operator_actions: vec![],
            alerts: vec![],
            evidence,
        });
    }

    /// A `propagation` event of a change some incident holds: the resolvers' times go to that
    /// incident. `false` when no incident holds the change.
    fn propagation(&mut self, e: &Event) -> bool {
        let Some(&(index, which)) = e.evidence["change"]
            .as_i64()
            .and_then(|id| self.changes.get(&id))
        else {
            return false;
        };
        let Some(b) = self.incidents.get_mut(index) else {
            return false;
        };
        let chain = match which {
            Which::Failover => &mut b.failover,
            Which::Failback => &mut b.failback,
        };
        let Some(base) = chain.authoritative else {
            return false;
        };
        for r in e.evidence["resolvers"].as_array().into_iter().flatten() {
            let server = r["server"].as_str().unwrap_or("?").to_string();
            match r["after_ms"].as_i64() {
                Some(after) => chain.resolvers.push((
                    server,
                    Mark {
                        at: base.at + chrono::TimeDelta::milliseconds(after.max(0)),
                        event: e.id,
                    },
                )),
                None => b.not_seen.push(server),
            }
        }
        b.evidence.push(e.id);
        b.evidence.sort_unstable();
        true
    }

    pub fn finish(self) -> Vec<Incident> {
        self.incidents.into_iter().map(Building::report).collect()
    }
}

/// The provider accepted the change `slowest` ms before the change event (verification starts
/// at acceptance), never before `floor`.
fn accept(chain: &mut Chain, change: Mark, slowest: i64, floor: Time) {
    let at = (change.at - chrono::TimeDelta::milliseconds(slowest)).max(floor);
    chain.accepted = Some(Mark {
        at: at.min(change.at),
        event: change.event,
    });
    chain.authoritative = Some(change);
}

impl Building {
    fn report(self) -> Incident {
        let start = self.first.at;
        let mut milestones = Vec::new();
        let mut add = |step: Step, m: Option<Mark>, server: Option<String>| {
            if let Some(m) = m {
                milestones.push(Milestone {
                    step,
                    at: m.at,
                    event: m.event,
                    since_start_ms: ms(m.at - start),
                    server,
                });
            }
        };
        add(Step::Outage, Some(self.first), None);
        add(Step::Decision, self.failover.decision, None);
        add(Step::Accepted, self.failover.accepted, None);
        add(Step::Authoritative, self.failover.authoritative, None);
        for (server, m) in &self.failover.resolvers {
            add(Step::Resolver, Some(*m), Some(server.clone()));
        }
        add(Step::Recovery, self.recovery, None);
        add(Step::FailbackDecision, self.failback.decision, None);
        add(Step::FailbackAccepted, self.failback.accepted, None);
        add(
            Step::FailbackAuthoritative,
            self.failback.authoritative,
            None,
        );
        add(Step::FailbackVerified, self.end, None);
        for (server, m) in &self.failback.resolvers {
            add(Step::FailbackResolver, Some(*m), Some(server.clone()));
        }
        // Stable: equal times keep the chain's order.
        milestones.sort_by_key(|m| m.at);
        let between = |a: Option<Mark>, b: Option<Mark>| Some(ms(b?.at - a?.at));
        let last_resolver = self
            .failover
            .resolvers
            .iter()
            .map(|(_, m)| *m)
            .max_by_key(|m| m.at);
        let durations = Durations {
            outage_to_decision_ms: between(Some(self.first), self.failover.decision),
            decision_to_accepted_ms: between(self.failover.decision, self.failover.accepted),
            accepted_to_authoritative_ms: between(
                self.failover.accepted,
                self.failover.authoritative,
            ),
            authoritative_to_resolvers_ms: between(self.failover.authoritative, last_resolver),
            recovery_to_failback_ms: between(self.recovery, self.end),
            failback_decision_to_verified_ms: between(self.failback.decision, self.end),
            total_ms: between(Some(self.first), self.end),
        };
        Incident {
            id: self.first.event,
            status: if self.end.is_some() {
                Status::Closed
            } else {
                Status::Open
            },
            start,
            end: self.end.map(|m| m.at),
            cause: self.cause,
            milestones,
            durations,
            not_seen: self.not_seen,
            steps: self.steps,
            operator_actions: self.operator_actions,
            alerts: self.alerts,
            evidence: self.evidence,
        }
    }
}

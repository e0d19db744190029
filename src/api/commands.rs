//! Operator commands. Each goes through the domain's actor (which persists the step before any
//! provider call) and answers with a one-line `message` a chatops bot can post as is.

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::body::{Mutation, Reasoned};
use super::domains::{actor_error, full, rfc3339, KnownDomain};
use super::error::ApiError;
use super::idempotency::Done;
use super::Api;
use crate::machine::{self, Command, Effect, Input, Policy};
use crate::model::Side;

/// Longest pin accepted.
const PIN_MAX_DAYS: i64 = 366;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: String,
}

impl Reasoned for ReasonBody {
    fn reason(&self) -> &str {
        &self.reason
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    reason: String,
    #[serde(default)]
    dry_run: bool,
}

impl Reasoned for MoveBody {
    fn reason(&self) -> &str {
        &self.reason
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    side: Side,
    until: DateTime<Utc>,
    reason: String,
}

impl Reasoned for PinBody {
    fn reason(&self) -> &str {
        &self.reason
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceBody {
    /// The side used during the window.
    side: Side,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    reason: String,
}

impl Reasoned for MaintenanceBody {
    fn reason(&self) -> &str {
        &self.reason
    }
}

/// Sends `command` to the domain's actor; `message` says what was done, in one line.
async fn send(
    api: &Api,
    caller: &Caller,
    domain: &str,
    command: Command,
    reason: &str,
    message: String,
) -> Result<Done, ApiError> {
    let (cfg, handle) = api.domain(domain)?;
    let reply = handle
        .command(command, &caller.name, reason)
        .await
        .map_err(actor_error)?;
    Ok(Done::ok(json!({
        "message": message,
        "status": full(&reply.status, cfg),
    })))
}

/// `field` (a pin's or a window's end) must be in the future and at most [`PIN_MAX_DAYS`] away.
fn ahead(field: &str, t: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), ApiError> {
    if t <= now {
        return Err(ApiError::Validation(format!(
            "{field} {} is not in the future (now {})",
            rfc3339(t),
            rfc3339(now)
        )));
    }
    if t > now + chrono::Duration::days(PIN_MAX_DAYS) {
        return Err(ApiError::Validation(format!(
            "{field} {} is more than {PIN_MAX_DAYS} days away",
            rfc3339(t)
        )));
    }
    Ok(())
}

fn who(caller: &Caller, reason: &str) -> String {
    format!("by {}: {reason}", caller.name)
}

/// Failover or failback: `dry_run` answers what would happen and changes nothing.
async fn move_to(
    api: Api,
    caller: Caller,
    domain: String,
    m: Mutation<MoveBody>,
    side: Side,
) -> Response {
    let (command, verb, would) = match side {
        Side::Backup => (
            Command::Failover,
            "failing over to backup",
            "fail over to backup",
        ),
        Side::Primary => (
            Command::Failback,
            "failing back to primary",
            "fail back to primary",
        ),
    };
    let work = || async {
        let (cfg, handle) = api.domain(&domain)?;
        let name = cfg.name.without_dot();
        let reason = &m.body.reason;
        if !m.body.dry_run {
            let message = format!("{name} {verb} {}", who(&caller, reason));
            return send(&api, &caller, &domain, command, reason, message).await;
        }
        // What the machine would say, stepped on a copy of the current state.
        let status = handle.status().await.map_err(actor_error)?;
        let mut state = status.state.clone();
        let input = Input::Command {
            command,
            by: caller.name.clone(),
            reason: reason.clone(),
        };
        let fx = machine::step(&mut state, input, Utc::now(), &Policy::default());
        if let Some(Effect::Rejected { reason }) =
            fx.iter().find(|e| matches!(e, Effect::Rejected { .. }))
        {
            return Err(ApiError::Refused(format!(
                "dry run: would be refused: {reason}"
            )));
        }
        let plan = handle
            .plan_for(side)
            .await
            .map_err(actor_error)?
            .map_err(ApiError::Provider)?;
        let changes: Vec<String> = plan
            .desired
            .iter()
            .filter(|d| !plan.actual.contains(d))
            .map(|d| d.to_string())
            .collect();
        let message = format!(
            "dry run: {name} would {would}: {}; nothing was changed",
            if changes.is_empty() {
                format!("the {side} records are already live")
            } else {
                format!(
                    "{} change(s): {}",
                    plan.changes.changes.len(),
                    changes.join(" | ")
                )
            }
        );
        Ok(Done::ok(json!({
            "message": message,
            "dry_run": true,
            "plan": plan,
            "status": full(&status, cfg),
        })))
    };
    api.once(&caller, &m, work).await
}

pub async fn failover(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<MoveBody>,
) -> Response {
    move_to(api, caller, domain, m, Side::Backup).await
}

pub async fn failback(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<MoveBody>,
) -> Response {
    move_to(api, caller, domain, m, Side::Primary).await
}

pub async fn pin(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<PinBody>,
) -> Response {
    let work = || async {
        let (cfg, _) = api.domain(&domain)?;
        let b = &m.body;
        let now = Utc::now();
        ahead("until", b.until, now)?;
        let message = format!(
            "{} pinned to {} until {} {}",
            cfg.name.without_dot(),
            b.side,
            rfc3339(b.until),
            who(&caller, &b.reason)
        );
        let command = Command::Pin {
            side: b.side,
            until: b.until,
        };
        send(&api, &caller, &domain, command, &b.reason, message).await
    };
    api.once(&caller, &m, work).await
}

/// Schedules a maintenance window (`src/machine.rs`, "Maintenance windows").
pub async fn maintenance(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<MaintenanceBody>,
) -> Response {
    let work = || async {
        let (cfg, _) = api.domain(&domain)?;
        let b = &m.body;
        let now = Utc::now();
        if b.end <= b.start {
            return Err(ApiError::Validation(format!(
                "end {} is not after start {}",
                rfc3339(b.end),
                rfc3339(b.start)
            )));
        }
        ahead("end", b.end, now)?;
        let message = format!(
            "{} maintenance window scheduled: the {} from {} to {} {}",
            cfg.name.without_dot(),
            b.side,
            rfc3339(b.start),
            rfc3339(b.end),
            who(&caller, &b.reason)
        );
        let command = Command::Maintenance {
            side: b.side,
            start: b.start,
            end: b.end,
        };
        send(&api, &caller, &domain, command, &b.reason, message).await
    };
    api.once(&caller, &m, work).await
}

pub async fn cancel_maintenance(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<ReasonBody>,
) -> Response {
    simple(
        api,
        caller,
        domain,
        m,
        Command::CancelMaintenance,
        "maintenance window cancelled",
    )
    .await
}

/// The simple commands: unpin, pause, resume, approve.
async fn simple(
    api: Api,
    caller: Caller,
    domain: String,
    m: Mutation<ReasonBody>,
    command: Command,
    done: &'static str,
) -> Response {
    let work = || async {
        let (cfg, _) = api.domain(&domain)?;
        let message = format!(
            "{} {done} {}",
            cfg.name.without_dot(),
            who(&caller, &m.body.reason)
        );
        send(&api, &caller, &domain, command, &m.body.reason, message).await
    };
    api.once(&caller, &m, work).await
}

pub async fn unpin(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<ReasonBody>,
) -> Response {
    simple(api, caller, domain, m, Command::Unpin, "unpinned").await
}

pub async fn pause(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<ReasonBody>,
) -> Response {
    simple(api, caller, domain, m, Command::Pause, "automation paused").await
}

pub async fn resume(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<ReasonBody>,
) -> Response {
    simple(
        api,
        caller,
        domain,
        m,
        Command::Resume,
        "automation resumed",
    )
    .await
}

pub async fn approve(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    KnownDomain(domain): KnownDomain,
    m: Mutation<ReasonBody>,
) -> Response {
    simple(
        api,
        caller,
        domain,
        m,
        Command::Approve,
        "failback approved",
    )
    .await
}

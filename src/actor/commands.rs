//! Operator commands and reverts: the machine decides, the operator is answered with what it
//! did (or, for a revert, when its change ends).

use serde_json::json;
use tokio::sync::oneshot;

use super::change::{ChangeError, ChangeReport};
use crate::events::EventKind;
use crate::machine::{Command, Effect, Input};
use crate::store::NewEvent;

use super::{not_leader, Actor, ActorError, CommandReply, Revert, RevertDone};

/// A revert whose change is in flight: its records are what the change (and its retries)
/// publish; the operator's request is answered when it first ends.
pub(super) struct RevertInFlight {
    pub(super) revert: Revert,
    pub(super) reply: Option<oneshot::Sender<Result<RevertDone, ActorError>>>,
}

impl Actor {
    pub(super) async fn on_command(
        &mut self,
        command: Command,
        by: &str,
        reason: &str,
    ) -> Result<CommandReply, ActorError> {
        if !self.leading {
            return Err(ActorError::NotLeader(not_leader(&self.deps.fence.report())));
        }
        let label = format!("{command:?}");
        let fx = self
            .input(
                Input::Command {
                    command,
                    by: by.into(),
                    reason: reason.into(),
                },
                by,
                Some(reason),
            )
            .await?;
        if let Some(Effect::Rejected { reason }) =
            fx.iter().find(|e| matches!(e, Effect::Rejected { .. }))
        {
            return Err(ActorError::Rejected(reason.clone()));
        }
        let done: Vec<String> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Publish { side, .. } => Some(format!("publishing the {side} records")),
                other => other.recorded().map(|(_, message)| message),
            })
            .collect();
        let message = format!(
            "{}: {} by {by}: {reason}{}",
            self.cfg.name.without_dot(),
            label.to_lowercase(),
            if done.is_empty() {
                String::new()
            } else {
                format!(" ({})", done.join("; "))
            }
        );
        Ok(CommandReply {
            message,
            status: self.status(),
        })
    }

    /// An operator's revert: the machine decides (as for a failover or failback command), the
    /// change publishes the snapshot's records, and the operator hears back when it ends.
    pub(super) async fn on_revert(
        &mut self,
        revert: Revert,
        reply: oneshot::Sender<Result<RevertDone, ActorError>>,
    ) {
        if !self.leading {
            let _ = reply.send(Err(ActorError::NotLeader(not_leader(
                &self.deps.fence.report(),
            ))));
            return;
        }
        if self.change_running {
            let _ = reply.send(Err(ActorError::Rejected(format!(
                "a change to {} is being applied; nothing was reverted. Retry once it is verified (see GET /v1/domains/{}/events)",
                self.cfg.name.without_dot(),
                self.cfg.name.without_dot()
            ))));
            return;
        }
        let input = Input::Revert {
            side: revert.side,
            snapshot: revert.snapshot,
            by: revert.by.clone(),
            reason: revert.reason.clone(),
        };
        let (by, reason) = (revert.by.clone(), revert.reason.clone());
        self.revert = Some(Box::new(RevertInFlight {
            revert,
            reply: Some(reply),
        }));
        let outcome = self.input(input, &by, Some(&reason)).await;
        let refused = match outcome {
            Err(e) => Some(e),
            Ok(fx) => fx.into_iter().find_map(|e| match e {
                Effect::Rejected { reason } => Some(ActorError::Rejected(reason)),
                _ => None,
            }),
        };
        if let Some(e) = refused {
            if let Some(reply) = self.revert.take().and_then(|r| r.reply) {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Answers the operator whose revert's change ended (the first time it ends) and records it.
    pub(super) async fn revert_ended(&mut self, result: &Result<ChangeReport, ChangeError>) {
        let Some(r) = self.revert.as_mut() else {
            return;
        };
        let Some(reply) = r.reply.take() else {
            return;
        };
        let (id, by, reason) = (
            r.revert.snapshot,
            r.revert.by.clone(),
            r.revert.reason.clone(),
        );
        let answer = match result {
            Ok(report) => {
                let change = report
                    .change_id
                    .map_or("no change needed".to_string(), |c| format!("change {c}"));
                let ev = NewEvent {
                    domain: self.cfg.name.clone(),
                    at: self.deps.clock.utc(),
                    kind: EventKind::Revert,
                    actor: by.clone(),
                    reason: Some(reason.clone()),
                    message: format!("reverted to snapshot {id} ({change})"),
                    evidence: json!({"snapshot": id, "change": report.change_id, "changes": report.plan.changes}).into(),
                };
                self.record(ev).await;
                Ok(RevertDone {
                    change_id: report.change_id,
                    message: format!(
                        "{}: reverted to snapshot {id} by {by}: {reason} ({change})",
                        self.cfg.name.without_dot()
                    ),
                })
            }
            Err(e)
                if (matches!(e, ChangeError::Fenced(_)) && !self.deps.fence.is_leader())
                    || !self.leading =>
            {
                Err(ActorError::NotLeader(format!(
                "this instance lost the lease while reverting to snapshot {id}; nothing was written ({e}). The leader now decides: retry there"
            )))
            }
            Err(e) => Err(ActorError::Failed(format!(
                "revert to snapshot {id} failed: {e}; the controller retries it with backoff (see GET /v1/domains/{}/events)",
                self.cfg.name.without_dot()
            ))),
        };
        let _ = reply.send(answer);
    }
}

//! The actor's side of a publish: the change runs in a child task (`change::publish`) and
//! reports back; failures are retried by kind; propagation to resolvers is tracked afterwards.

use std::sync::Arc;

use serde_json::json;

use super::change::{desired_records, ChangeError, ChangeReport, Origin};
use super::mirrors::publish_everywhere;
use crate::events::EventKind;
use crate::machine::Input;
use crate::model::{RecordSet, Side};
use crate::store::NewEvent;

use super::{Actor, Msg};

impl Actor {
    pub(super) async fn desired(&self, side: Side) -> Result<Vec<RecordSet>, ChangeError> {
        let live_ttl = self.state.machine.published_ttl;
        desired_records(
            &**self.store(),
            &self.managed,
            self.cfg.failover_ttl,
            &self.state,
            side,
            live_ttl,
        )
        .await
    }

    pub(super) async fn start_change(
        &mut self,
        side: Side,
        resume: Vec<crate::store::ChangeIntent>,
    ) {
        if !self.leading {
            return;
        }
        if self.change_running {
            // Only a move decided over a TTL write in flight comes here (the machine allows
            // no other second change): the move goes first, the TTL write is stopped.
            if self.running_ttl_write || self.running_catch_up {
                self.supersede_ttl_write();
            } else {
                return;
            }
        }
        // A revert publishes its snapshot's records (and so do its retries); any other publish
        // the side's own.
        let reverting = self
            .revert
            .as_ref()
            .filter(|r| r.revert.side == side)
            .map(|r| {
                let origin = Origin {
                    by: r.revert.by.clone(),
                    why: format!("before revert to snapshot {}", r.revert.snapshot),
                    waiting: None,
                    ttl_only: false,
                };
                (r.revert.desired.clone(), origin)
            });
        let mut origin = reverting
            .as_ref()
            .map_or_else(|| Origin::automation(side), |(_, o)| o.clone());
        let ttl_write = match self.state.machine.ttl_write() {
            Some(w) if reverting.is_none() && self.state.machine.in_flight.is_none() => Some(w),
            _ => None,
        };
        if let Some(w) = ttl_write {
            origin.ttl_only = true;
            origin.why = match w {
                crate::machine::TtlWrite::Lower(ttl) => {
                    format!("before lowering the primary's TTL to {ttl} s")
                }
                crate::machine::TtlWrite::Restore(ttl) => {
                    format!("before restoring the primary's TTL to {ttl} s")
                }
            };
        }
        // The timeline says when a change waits for its provider's lockout, and until when.
        let notes = self.tx.clone();
        origin.waiting = Some(super::change::Waiting(std::sync::Arc::new(move |until| {
            let _ = notes.try_send(Msg::ChangeWaiting(side, until));
        })));
        let desired = match reverting {
            Some((records, _)) => records,
            None => match self.desired(side).await {
                Ok(d) => d,
                Err(e) => {
                    // Reported through the mailbox like any other outcome (no recursion into
                    // `input`), under a number of its own (never a superseded write's).
                    self.changes_started += 1;
                    let generation = self.changes_started;
                    let _ = self
                        .tx
                        .try_send(Msg::ChangeDone(side, generation, Box::new(Err(e))));
                    return;
                }
            },
        };
        self.running_ttl_write = ttl_write.is_some();
        self.spawn_publish(side, self.deps.clone(), desired, resume, origin);
    }

    /// Runs the publish of `side` at `deps`' providers in a child task, which reports back
    /// through the mailbox under a number of its own.
    pub(super) fn spawn_publish(
        &mut self,
        side: Side,
        deps: Arc<super::change::ChangeDeps>,
        desired: Vec<RecordSet>,
        resume: Vec<crate::store::ChangeIntent>,
        origin: Origin,
    ) {
        self.change_running = true;
        self.changes_started += 1;
        let generation = self.changes_started;
        let (managed, tx) = (self.managed.clone(), self.tx.clone());
        let epoch = self.deps.fence.epoch().unwrap_or_default();
        let work = tokio::spawn(async move {
            publish_everywhere(&deps, &managed, side, desired, resume, &origin).await
        });
        // Kept so that losing the lease stops the change where it waits (the provider's
        // queue, its rate limit, a retry's backoff) instead of leaving it to the fence.
        self.publishing = Some(work.abort_handle());
        tokio::spawn(async move {
            // A panic inside the publish (a provider client's bug) is reported like any failure:
            // unreported, the actor would wait for this change forever and never publish again.
            let result = match work.await {
                Ok(result) => result,
                Err(e) if e.is_cancelled() => Err(ChangeError::Fenced(format!(
                    "stopped before it ended: this instance lost the lease it held at epoch {epoch}"
                ))),
                Err(e) => Err(ChangeError::Transient(format!(
                    "the publish task failed: {e}"
                ))),
            };
            let _ = tx
                .send(Msg::ChangeDone(side, generation, Box::new(result)))
                .await;
        });
    }

    /// A move was decided while a TTL write runs: that write stops where it is (its report is
    /// ignored: `changes_started` moves on), so the move never waits for it. Its intent, if it
    /// wrote one, stays unfinished and is abandoned at the next start; the move plans on a
    /// fresh read of what is live, whether the TTL write landed or not.
    fn supersede_ttl_write(&mut self) {
        tracing::info!(domain = %self.cfg.name, "a move goes first: stopping the TTL write in flight");
        if let Some(work) = self.publishing.take() {
            work.abort();
        }
        self.change_running = false;
        self.running_ttl_write = false;
        self.running_catch_up = false;
    }

    /// Leadership is gone: the change in flight (if any) stops where it is. The new leader
    /// resumes it from its intent, reading what is live first.
    pub(super) fn stop_publishing(&mut self) {
        if let Some(work) = self.publishing.take() {
            if !work.is_finished() {
                tracing::warn!(domain = %self.cfg.name, "lease lost: stopping the change in flight; the new leader resumes it");
                work.abort();
            }
        }
    }

    /// The change in flight waits for its provider's lockout until `until`: said once per
    /// lockout in the timeline, instead of the change failing at its deadline and retrying.
    pub(super) async fn on_change_waiting(&mut self, side: Side, until: std::time::SystemTime) {
        let until = chrono::DateTime::<chrono::Utc>::from(until);
        let second = until.timestamp();
        if !self.change_running || self.waiting_noted == Some(second) {
            return;
        }
        self.waiting_noted = Some(second);
        let message = format!(
            "the change publishing the {side} records waits for {}'s rate limit until {} UTC; nothing is sent before, and its deadline does not run meanwhile",
            self.deps.provider_name,
            until.format("%H:%M:%S")
        );
        self.event(
            EventKind::ChangeWaiting,
            message,
            json!({"side": side, "provider": self.deps.provider_name, "until": until}),
        )
        .await;
    }

    pub(super) async fn on_change_done(
        &mut self,
        side: Side,
        generation: u64,
        result: Result<ChangeReport, ChangeError>,
    ) {
        if generation != self.changes_started {
            // A TTL write a move superseded: the move's own report is the one that counts.
            return;
        }
        let ttl_write = std::mem::take(&mut self.running_ttl_write);
        let catch_up = std::mem::take(&mut self.running_catch_up);
        self.change_running = false;
        self.publishing = None;
        if catch_up {
            if self.leading {
                self.catch_up_done(side, result).await;
            }
            return;
        }
        self.revert_ended(&result).await;
        if let Err(error @ ChangeError::Fenced(_)) = &result {
            if !self.leading || !self.deps.fence.is_leader() {
                // The timeline says why a change this instance began was never applied by it.
                let me = self.deps.fence.vantage().to_string();
                let ev = NewEvent {
                    domain: self.cfg.name.clone(),
                    at: self.deps.clock.utc(),
                    kind: EventKind::Fenced,
                    actor: me.clone(),
                    reason: None,
                    message: format!(
                        "instance {me} did not apply its change publishing the {side} records: {error}"
                    ),
                    evidence: json!({"side": side, "error": error}).into(),
                };
                self.record(ev).await;
            }
        }
        if result.is_ok() {
            self.revert = None;
        }
        if !self.leading {
            // The lease went while the change ran; its writes were fenced, the new leader finishes.
            tracing::warn!(domain = %self.cfg.name, %side, outcome = ?result.as_ref().map(|r| r.change_id), "publish ended after this instance stopped leading; the leader takes it from here");
            return;
        }
        match result {
            Ok(report) => {
                self.attempts = 0;
                if ttl_write {
                    self.ttl_write_done(&report);
                } else if side == Side::Backup {
                    // Lowered early, the records before the lowering hold the TTL to restore.
                    let early = self.state.early_ttl_snapshot.take();
                    if let Some(id) = early.or(report.snapshot_id) {
                        self.state.failover_snapshot = Some(id);
                    }
                } else {
                    self.state.early_ttl_snapshot = None;
                }
                let message = match report.change_id {
                    Some(id) => format!(
                        "change {id} published the {side} records; verified at {}",
                        servers(&report)
                    ),
                    None => format!(
                        "the {side} records were already live; verified at {}",
                        servers(&report)
                    ),
                };
                self.event(
                    EventKind::Change,
                    message,
                    serde_json::to_value(&report).unwrap_or_default(),
                )
                .await;
                let _ = self
                    .input(Input::ChangeVerified { side }, "automation", None)
                    .await;
                // The verified records are what is published now, their TTL included (the
                // status and the failback's TTL would otherwise show the replaced one until the
                // next reconcile read).
                let ttl = self.managed.ttl_of(&report.plan.desired);
                if ttl.is_some() && ttl != self.state.machine.published_ttl {
                    let observed = Input::Observed {
                        published: Some(side),
                        ttl,
                    };
                    let _ = self.input(observed, "automation", None).await;
                }
                self.note_providers(side, &report).await;
                self.track_propagation(report);
            }
            Err(error) if ttl_write => self.on_ttl_write_failed(error).await,
            Err(error) => self.on_change_failed(side, error).await,
        }
    }

    /// The snapshot before a lowering is kept for its restore (and a failover meanwhile);
    /// a restore ends its use. Persisted with the machine's next step (ChangeVerified).
    fn ttl_write_done(&mut self, report: &ChangeReport) {
        match self.state.machine.ttl_write() {
            Some(crate::machine::TtlWrite::Lower(_)) if report.snapshot_id.is_some() => {
                self.state.early_ttl_snapshot = report.snapshot_id;
            }
            Some(crate::machine::TtlWrite::Restore(_)) => self.state.early_ttl_snapshot = None,
            _ => {}
        }
    }

    /// A TTL write failed: not retried here (the machine says when, if ever: a TTL write never
    /// holds up a move), counted like any failure.
    async fn on_ttl_write_failed(&mut self, error: ChangeError) {
        let kind = error.kind();
        metrics::counter!("mxguard_change_failures_total", "kind" => kind).increment(1);
        if matches!(error, ChangeError::Fenced(_)) && !self.deps.fence.is_leader() {
            return;
        }
        tracing::warn!(domain = %self.cfg.name, %error, kind, "TTL write failed");
        let error = format!("{kind}: {error}");
        let _ = self
            .input(
                Input::ChangeFailed {
                    side: Side::Primary,
                    error,
                },
                "automation",
                None,
            )
            .await;
    }

    /// A failed publish, by kind (`ChangeError::retry_in`): a fenced one is left to the leader
    /// (no retry, no alert: the lease moved); the others are retried when their kind says, and
    /// the machine raises the alert, naming the kind and whether someone must act.
    pub(super) async fn on_change_failed(&mut self, side: Side, error: ChangeError) {
        // Refused by the fence while the lease is still ours locally: the store could not
        // confirm it (unreachable), or it moved an instant ago; either way, ask again later.
        let error = match error {
            ChangeError::Fenced(why) if self.deps.fence.is_leader() => ChangeError::Transient(
                format!("the lease could not be confirmed before writing: {why}"),
            ),
            other => other,
        };
        let kind = error.kind();
        metrics::counter!("mxguard_change_failures_total", "kind" => kind).increment(1);
        self.attempts += 1;
        let Some(wait) = error.retry_in(self.attempts) else {
            tracing::warn!(domain = %self.cfg.name, %side, %error, kind, "publish fenced: this instance may not write; the leader finishes the change");
            self.retry_at = None;
            return;
        };
        self.retry_at = Some(self.deps.clock.now() + wait);
        tracing::warn!(domain = %self.cfg.name, %side, %error, kind, attempt = self.attempts, ?wait, "publish failed; will retry");
        let action = if error.needs_an_operator() {
            "someone must fix this; "
        } else {
            ""
        };
        let _ = self
            .input(
                Input::ChangeFailed {
                    side,
                    error: format!(
                        "{kind}: {error} ({action}attempt {}, next in {}s)",
                        self.attempts,
                        wait.as_secs()
                    ),
                },
                "automation",
                None,
            )
            .await;
    }

    /// Records, per resolver, when the change became visible there (after old TTLs ran out).
    pub(super) fn track_propagation(&self, report: ChangeReport) {
        if report.change_id.is_none() || self.deps.verifier.resolvers.is_empty() {
            return;
        }
        let clock = self.deps.clock.clone();
        let (verifier, store, domain, bus, state) = (
            self.deps.verifier.clone(),
            self.store().clone(),
            self.cfg.name.clone(),
            self.deps.events.clone(),
            self.state.machine.clone(),
        );
        tokio::spawn(async move {
            let seen = verifier
                .resolvers(
                    &report.plan.desired,
                    crate::verify::cache_bound(report.replaced_ttl),
                )
                .await;
            let summary: Vec<String> = seen
                .iter()
                .map(|v| match v.after_ms {
                    Some(ms) => format!("{} after {:.1}s", v.server, ms as f64 / 1000.0),
                    None => format!("{} not yet", v.server),
                })
                .collect();
            let ev = NewEvent {
                domain,
                at: clock.utc(),
                kind: EventKind::Propagation,
                actor: "automation".into(),
                reason: None,
                message: format!(
                    "{} records visible at resolvers: {}",
                    report.side,
                    summary.join(", ")
                ),
                evidence: json!({"change": report.change_id, "resolvers": seen}).into(),
            };
            if let Ok(stored) = store.append_event(&ev).await {
                bus.publish(stored, state);
            }
        });
    }
}

fn servers(r: &ChangeReport) -> String {
    r.authoritative
        .iter()
        .map(|v| format!("{} ({} ms)", v.server, v.after_ms.unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

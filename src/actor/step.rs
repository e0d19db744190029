//! One step of the machine: persisted (state, then events) before any effect is carried out;
//! the timeline and the event bus get every event.

use serde_json::json;

use crate::events::EventKind;
use crate::machine::{self, Effect, Input};
use crate::store::{JsonText, NewEvent, StateSave, StoreError};

use super::{not_leader, Actor, ActorError};

impl Actor {
    /// Steps the machine, persists state and events, then carries out the effects.
    pub(super) async fn input(
        &mut self,
        input: Input,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Vec<Effect>, ActorError> {
        let epoch = match self.deps.fence.epoch() {
            Some(e) if self.leading => e,
            _ => return Err(ActorError::NotLeader(not_leader(&self.deps.fence.report()))),
        };
        let mut next = self.state.clone();
        let fx = machine::step(
            &mut next.machine,
            input,
            self.deps.clock.utc(),
            &self.policy,
        );
        if fx.iter().any(|e| matches!(e, Effect::Rejected { .. })) {
            return Ok(fx);
        }
        if next != self.state {
            let state = JsonText::of(&next).map_err(|e| ActorError::Store(e.to_string()))?;
            let save = StateSave {
                domain: self.cfg.name.clone(),
                state,
                expected_version: self.version,
                at: self.deps.clock.utc(),
            };
            match self.writer.save_state(save, epoch).await {
                Ok(v) => {
                    self.version = Some(v);
                    self.state = next;
                }
                Err(e @ StoreError::Fenced(_)) => {
                    tracing::warn!(domain = %self.cfg.name, error = %e, "state not persisted: fenced; stepping down");
                    self.leading = false;
                    return Err(ActorError::NotLeader(e.to_string()));
                }
                Err(e) => {
                    tracing::error!(domain = %self.cfg.name, error = %e, "state not persisted; effects withheld");
                    return Err(ActorError::Store(e.to_string()));
                }
            }
        }
        // Each event's evidence is built when it is recorded and handed over as text: a tree of
        // the rounds kept across the writes would be held by every actor waiting for the
        // writer (~1 KB each; at a start, 100,000 of them at once).
        for e in &fx {
            let evidence = match e {
                Effect::Transition { from, to, .. } => {
                    metrics::counter!("mxguard_transitions_total", "domain" => self.cfg.name.without_dot().to_string()).increment(1);
                    json!({"from": from, "to": to, "rounds": self.rounds_seen()})
                }
                Effect::Event { .. } => json!({"rounds": self.rounds_seen()}),
                Effect::Ttl(c) => json!({
                    "old_ttl": c.old_ttl,
                    "new_ttl": c.new_ttl,
                    "why": c.why,
                    "rounds": self.rounds_seen(),
                }),
                Effect::Publish { side, why, from } => {
                    tracing::info!(domain = %self.cfg.name, %side, why, snapshot = ?from, "publishing");
                    if from.is_none() {
                        self.revert = None;
                    }
                    self.attempts = 0;
                    // Boxed: a step waits on the store, and this rare branch would size it.
                    Box::pin(self.start_change(*side, Vec::new())).await;
                    continue;
                }
                Effect::Rejected { .. } => continue,
            };
            let Some((kind, message)) = e.recorded() else {
                continue;
            };
            if kind.is_alert() {
                tracing::warn!(domain = %self.cfg.name, %kind, message, "alert");
            } else {
                tracing::info!(domain = %self.cfg.name, %kind, message, "event");
            }
            let ev = NewEvent {
                domain: self.cfg.name.clone(),
                at: self.deps.clock.utc(),
                kind,
                actor: actor.to_string(),
                reason: reason.map(str::to_string),
                message,
                evidence: evidence.into(),
            };
            self.record(ev).await;
        }
        Ok(fx)
    }

    /// The latest round of each side, as an event's evidence shows them.
    fn rounds_seen(&self) -> serde_json::Value {
        json!(self.rounds.present().collect::<Vec<_>>())
    }

    pub(super) async fn event(
        &self,
        kind: EventKind,
        message: String,
        evidence: serde_json::Value,
    ) {
        let ev = NewEvent {
            domain: self.cfg.name.clone(),
            at: self.deps.clock.utc(),
            kind,
            actor: "automation".into(),
            reason: None,
            message,
            evidence: evidence.into(),
        };
        self.record(ev).await;
    }

    /// Appends to the timeline, then publishes on the event bus (with the machine's state).
    pub(super) async fn record(&self, ev: NewEvent) {
        let kind = ev.kind;
        match self.writer.append_event(ev).await {
            Ok(stored) => self.deps.events.publish(stored, self.state.machine.clone()),
            Err(e) => {
                tracing::error!(domain = %self.cfg.name, %kind, error = %e, "event not recorded")
            }
        }
    }
}
